//! Federation providers for the issue-18 tests: `tests/fixtures/
//! federation_provider.py` (a mini block-storage API with a token
//! exchange and a call log) in its own process on a free port, killed by
//! PID on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One call a provider answered, from its `GET /calls`.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// With the query.
    pub path: String,
    /// `X-Auth-Token` as the provider received it.
    pub token: Option<String>,
    pub start: f64,
    pub end: f64,
}

/// A provider process, stopped (SIGKILL, by PID) on drop.
pub struct Provider {
    child: Option<Child>,
    pub name: String,
    pub addr: SocketAddr,
}

impl Provider {
    /// `volumes`: the ids it holds. `None` when python3 is missing outside CI.
    pub fn start(name: &str, volumes: &[&str]) -> Option<Provider> {
        Self::start_with(name, volumes, &[])
    }

    /// With more flags (`--delay-ms N`, `--token-ttl S`).
    pub fn start_with(name: &str, volumes: &[&str], flags: &[&str]) -> Option<Provider> {
        let python = Command::new("python3").arg("--version").output();
        if !super::require("python3", python.is_ok_and(|o| o.status.success())) {
            return None;
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/federation_provider.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--name", name, "--volumes", &volumes.join(",")])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a federation provider");
        let stdout = child.stdout.take().unwrap();
        let mut provider = Provider {
            child: Some(child),
            name: name.to_string(),
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let line =
            super::ready_line(stdout, Duration::from_secs(20)).expect("the provider's ready line");
        let port = line
            .strip_prefix("ready port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad ready line {line:?}"));
        provider.addr.set_port(port);
        Some(provider)
    }

    /// `http://ADDR/token`, for `token_url`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every call answered so far, in order (`/calls` and `/healthz` aside).
    pub fn calls(&self) -> Vec<Call> {
        let (status, body) =
            super::backends::http_get(self.addr, "/calls").expect("asking a provider its calls");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| Call {
                method: c["method"].as_str().unwrap().to_string(),
                path: c["path"].as_str().unwrap().to_string(),
                token: c["token"].as_str().map(str::to_string),
                start: c["start"].as_f64().unwrap(),
                end: c["end"].as_f64().unwrap(),
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the provider (SIGKILL) and waits for it: its port refuses.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

//! `lbd`'s settings: every flag has an environment variable, and the defaults
//! start the embedded setup (process nodes on loopback addresses).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use ipnet::{IpNet, Ipv4Net};

use crate::model::{Limit, Quota};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComputeKind {
    /// Each LB node is a local `lb-node` process.
    Process,
    /// Each LB node is a libvirt VM booting the node image (needs
    /// `--network netns` and a build with the `libvirt` feature).
    Libvirt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkKind {
    /// Each project a slice of 127.0.0.0/8; no privileges needed.
    Loopback,
    /// Each project a network namespace with a bridge, joined to the host by
    /// a veth pair (needs root).
    Netns,
}

/// What `--vm-domain-type` asks libvirt for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmDomainType {
    /// `kvm` when /dev/kvm opens and a KVM guest boots there (probed once,
    /// in the background), else `qemu`.
    Auto,
    /// Hardware virtualization (needs /dev/kvm).
    Kvm,
    /// Emulation (TCG): slower, but needs no /dev/kvm.
    Qemu,
}

/// lbd: the lbaas controller daemon.
#[derive(Debug, Clone, Parser)]
#[command(name = "lbd", version, about)]
pub struct DaemonConfig {
    /// Address of the HTTP API (`/api`, `/healthz`).
    #[arg(long, env = "LBAAS_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the database, the admin token and node files live
    /// [default: $XDG_STATE_HOME/lbaas or ~/.local/state/lbaas].
    #[arg(long, env = "LBAAS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Milliseconds a client has to send a request head on the API (also the
    /// idle time allowed between requests on a keep-alive connection).
    #[arg(long, env = "LBAAS_API_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_header_timeout_ms: u64,
    /// API connections open at once; more get a 503 and are closed.
    #[arg(long, env = "LBAAS_API_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_max_connections: u32,
    /// Address of the authoritative DNS server (UDP and TCP, same port).
    #[arg(long, env = "LBAAS_DNS_LISTEN", default_value = "127.0.0.1:5353")]
    pub dns_listen: SocketAddr,
    /// The DNS zone instances live in: `<instance>.<project>.<zone>`.
    #[arg(long, env = "LBAAS_ZONE", default_value = "lbaas.internal")]
    pub zone: String,
    /// TTL of instance A records, in seconds; short so a change reaches clients quickly.
    #[arg(long, env = "LBAAS_DNS_TTL", default_value_t = 5)]
    pub dns_ttl: u32,
    /// The DNS server (`IP:PORT`) LB nodes resolve host-name backends with;
    /// without it, each node uses the system's (`/etc/resolv.conf`).
    #[arg(long, env = "LBAAS_RESOLVER")]
    pub resolver: Option<SocketAddr>,
    #[arg(long, env = "LBAAS_COMPUTE", value_enum, default_value = "process")]
    pub compute: ComputeKind,
    #[arg(long, env = "LBAAS_NETWORK", value_enum, default_value = "loopback")]
    pub network: NetworkKind,
    /// Pool that project subnets are allocated from [default: 127.0.0.0/8
    /// for loopback, 100.64.0.0/10 (carrier-grade NAT space) for netns].
    #[arg(long, env = "LBAAS_SUBNET_POOL")]
    pub subnet_pool: Option<Ipv4Net>,
    /// Prefix length of an allocated project subnet [default: 16 for
    /// loopback, 24 for netns].
    #[arg(long, env = "LBAAS_SUBNET_PREFIX")]
    pub subnet_prefix: Option<u8>,
    /// netns: the start of this lbd's namespace and interface names
    /// (`<prefix>-<project id>`, `<prefix>h<id>`); 1 to 6 letters or digits.
    #[arg(long, env = "LBAAS_NETNS_PREFIX", default_value = "lbaas")]
    pub netns_prefix: String,
    /// Where this lbd claims its project subnets on the host (a lock file
    /// per subnet), so other lbds do not take them; every lbd on a host must
    /// use the same one [default: /run/lbaas/subnets, else
    /// $XDG_RUNTIME_DIR/lbaas/subnets, else /tmp/lbaas-<uid>/subnets].
    #[arg(long, env = "LBAAS_SUBNET_LOCK_DIR")]
    pub subnet_lock_dir: Option<PathBuf>,
    /// Port of every LB node's admin API (on the node's own address).
    #[arg(long, env = "LBAAS_NODE_ADMIN_PORT", default_value_t = 9901)]
    pub node_admin_port: u16,
    /// Backends inside this CIDR (IPv4 or IPv6) may be link-local, lbd's own
    /// listeners or on the node admin port; repeat the flag for more (the
    /// variable takes a comma-separated list). A backend on the instance's
    /// own listener is refused anyway.
    #[arg(
        long = "allow-backend-cidr",
        env = "LBAAS_ALLOW_BACKEND_CIDR",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_backend_cidr: Vec<IpNet>,
    /// The `lb-node` executable [default: next to `lbd`].
    #[arg(long, env = "LBAAS_NODE_BINARY")]
    pub node_binary: Option<PathBuf>,
    /// netns: the user LB node processes become once their admin socket is
    /// bound (they start as root to join the namespace); a name or a uid.
    #[arg(long, env = "LBAAS_NODE_USER", default_value = "nobody")]
    pub node_user: String,
    /// libvirt: the connection URI.
    #[arg(long, env = "LBAAS_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// libvirt: the VMs' domain type.
    #[arg(long, env = "LBAAS_VM_DOMAIN_TYPE", value_enum, default_value = "auto")]
    pub vm_domain_type: VmDomainType,
    /// libvirt: memory per VM, MiB.
    #[arg(long, env = "LBAAS_VM_MEMORY", default_value_t = 128)]
    pub vm_memory: u32,
    /// libvirt: vCPUs per VM.
    #[arg(long, env = "LBAAS_VM_VCPUS", default_value_t = 1)]
    pub vm_vcpus: u32,
    /// libvirt: directory with `vmlinuz` and `initramfs.cpio.gz` from
    /// scripts/build-image.sh [default: target/image, next to the binary's dir].
    #[arg(long, env = "LBAAS_VM_IMAGE")]
    pub vm_image: Option<PathBuf>,
    /// Directories the kernel and initrd of a `compute: vm` managed pool may
    /// come from (repeatable, or comma-separated in the variable). A path
    /// elsewhere is refused (`vm_image_not_allowed`) before lbd looks at it,
    /// so tenants cannot probe this host's files. [default:
    /// `<state-dir>/backend-images` and target/backend-image next to the
    /// binary's dir, where scripts/build-backend-image.sh writes]
    #[arg(
        long = "backend-image-dir",
        env = "LBAAS_BACKEND_IMAGE_DIRS",
        value_delimiter = ','
    )]
    pub backend_image_dirs: Vec<PathBuf>,
    /// libvirt: start of this lbd's domain and tap names (`<prefix>-<project>-<instance>-<node>`).
    #[arg(long, env = "LBAAS_VM_PREFIX", default_value = "lbaas")]
    pub vm_prefix: String,
    /// libvirt: where each VM's secret disk is written (mode 0600). Not the
    /// state dir: that is 0700, and qemu runs as its own user, which must
    /// be able to pass through this directory (lbd makes it 0711).
    #[arg(
        long,
        env = "LBAAS_VM_SECRET_DIR",
        default_value = "/run/lbaas/vm-secrets"
    )]
    pub vm_secret_dir: PathBuf,
    /// Seconds a failed node may take to become healthy again before it is
    /// deleted (its replacement serves meanwhile).
    #[arg(long, env = "LBAAS_FAILOVER_GRACE", default_value_t = 60)]
    pub failover_grace: u64,
    /// Failover pauses when more than this share of all nodes fail at once
    /// (the circuit breaker), 0 to 1.
    #[arg(long, env = "LBAAS_FAILOVER_MAX_SHARE", default_value_t = 0.5, value_parser = share)]
    pub failover_max_share: f64,
    /// Seconds a retiring node may keep connections open before it is stopped.
    #[arg(long, env = "LBAAS_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Size at which an LB node process rotates its log (`nodes/node-N.log`).
    #[arg(long, env = "LBAAS_NODE_LOG_MAX_BYTES", default_value_t = 10 << 20)]
    pub node_log_max_bytes: u64,
    /// Rotated node log files kept.
    #[arg(long, env = "LBAAS_NODE_LOG_KEEP", default_value_t = 2)]
    pub node_log_keep: u32,
    /// Seconds raw samples are kept before they become 1-minute averages.
    #[arg(long, env = "LBAAS_SAMPLES_RAW_RETENTION", default_value_t = 3600)]
    pub samples_raw_retention: i64,
    /// Seconds 1-minute averages are kept.
    #[arg(long, env = "LBAAS_SAMPLES_MINUTE_RETENTION", default_value_t = 86_400)]
    pub samples_minute_retention: i64,
    /// Seconds events are kept.
    #[arg(long, env = "LBAAS_EVENTS_RETENTION", default_value_t = 604_800)]
    pub events_retention: i64,
    /// Seconds between retention passes over the monitor log.
    #[arg(long, env = "LBAAS_RETENTION_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_interval: u64,
    /// Days audit log entries are kept.
    #[arg(long, env = "LBAAS_AUDIT_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=36_500))]
    pub audit_retention_days: i64,
    /// API writes per second per user (GCRA; `rate_limited` 429 beyond).
    #[arg(long, env = "LBAAS_API_WRITE_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_write_rate: u32,
    /// API writes one user may make at once on top of the rate.
    #[arg(long, env = "LBAAS_API_WRITE_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_write_burst: u32,
    /// API reads per second per user.
    #[arg(long, env = "LBAAS_API_READ_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_read_rate: u32,
    /// API reads one user may make at once.
    #[arg(long, env = "LBAAS_API_READ_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_read_burst: u32,
    /// Calls per second per client address without a valid token.
    #[arg(long, env = "LBAAS_API_ANONYMOUS_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_anonymous_rate: u32,
    /// Calls one address without a valid token may make at once.
    #[arg(long, env = "LBAAS_API_ANONYMOUS_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_anonymous_burst: u32,
    /// Where `global`-scope rate limits count (`redis://host:port[/db]`),
    /// passed to the nodes; without it, `global` limits count per node.
    #[arg(long, env = "LBAAS_REDIS_URL", value_parser = redis_url)]
    pub redis_url: Option<String>,
    /// How long a node waits for Redis per check before it falls back to
    /// its `node` share of the limit.
    #[arg(long, env = "LBAAS_REDIS_TIMEOUT_MS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub redis_timeout_ms: u32,
    /// Projects a user may own unless its own quota says; -1: unlimited.
    #[arg(long, env = "LBAAS_DEFAULT_QUOTA_PROJECTS", default_value_t = -1, allow_negative_numbers = true, value_parser = limit)]
    pub default_quota_projects: i64,
    /// Instances a user may have unless its own quota says; -1: unlimited.
    #[arg(long, env = "LBAAS_DEFAULT_QUOTA_INSTANCES", default_value_t = -1, allow_negative_numbers = true, value_parser = limit)]
    pub default_quota_instances: i64,
    /// LB nodes a user's instances may cost (`min_nodes`, or `max_nodes`
    /// with autoscaling) unless its own quota says; -1: unlimited.
    #[arg(long, env = "LBAAS_DEFAULT_QUOTA_NODES", default_value_t = -1, allow_negative_numbers = true, value_parser = limit)]
    pub default_quota_nodes: i64,
}

fn limit(s: &str) -> Result<i64, String> {
    let v: i64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    Limit::from_wire(v)
        .map(Limit::to_wire)
        .map_err(|e| e.to_string())
}

/// Refused at start rather than by every node at its first check.
fn redis_url(s: &str) -> Result<String, String> {
    let host = s
        .strip_prefix("redis://")
        .or_else(|| s.strip_prefix("rediss://"))
        .map(|rest| rest.rsplit('@').next().unwrap_or_default())
        .and_then(|rest| rest.split(['/', '?']).next());
    match host {
        Some(h) if !h.is_empty() && !s.bytes().any(|b| b.is_ascii_control() || b == b' ') => {
            Ok(s.to_string())
        }
        _ => Err("expected redis://host:port[/db] or rediss://...".to_string()),
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

impl DaemonConfig {
    /// The subnet pool and project prefix, with the network driver's defaults.
    pub fn subnet_pool(&self) -> (Ipv4Net, u8) {
        let (pool, prefix) = match self.network {
            NetworkKind::Loopback => ("127.0.0.0/8", 16),
            NetworkKind::Netns => ("100.64.0.0/10", 24),
        };
        (
            self.subnet_pool
                .unwrap_or_else(|| pool.parse().expect("constant")),
            self.subnet_prefix.unwrap_or(prefix),
        )
    }

    /// The API's own rate limits.
    pub fn api_rates(&self) -> crate::api::rate_limit::ApiRates {
        use crate::api::rate_limit::{ApiRates, Rate};
        // clap keeps every value at least 1.
        let rate = |r, b| Rate::new(r, b).expect("flags are at least 1");
        ApiRates {
            writes: rate(self.api_write_rate, self.api_write_burst),
            reads: rate(self.api_read_rate, self.api_read_burst),
            anonymous: rate(self.api_anonymous_rate, self.api_anonymous_burst),
        }
    }

    /// The quota of users whose own limits do not say.
    pub fn default_quota(&self) -> Quota {
        let l = |v| Limit::from_wire(v).unwrap_or(Limit::Unlimited);
        Quota {
            max_projects: l(self.default_quota_projects),
            max_instances: l(self.default_quota_instances),
            max_nodes: l(self.default_quota_nodes),
        }
    }

    /// `--backend-image-dir`, or its default.
    pub fn backend_image_dirs(&self, state_dir: &std::path::Path) -> Vec<PathBuf> {
        if !self.backend_image_dirs.is_empty() {
            return self.backend_image_dirs.clone();
        }
        let built = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("backend-image")));
        std::iter::once(state_dir.join("backend-images"))
            .chain(built)
            .collect()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(crate::paths::default_state_dir)
    }
}

/// Checks the zone: dot-separated DNS labels.
pub fn validate_zone(zone: &str) -> Result<(), String> {
    let zone = zone.trim_end_matches('.');
    if zone.is_empty() || zone.len() > 200 {
        return Err(format!("zone {zone:?} must be 1 to 200 characters"));
    }
    for label in zone.split('.') {
        crate::model::names::validate_name(label).map_err(|e| format!("zone {zone:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs() {
        let c = DaemonConfig::try_parse_from(["lbd"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.dns_listen.to_string(), "127.0.0.1:5353");
        assert_eq!(c.zone, "lbaas.internal");
        assert_eq!(c.compute, ComputeKind::Process);
        assert_eq!(c.network, NetworkKind::Loopback);
        assert_eq!(c.subnet_pool().0.to_string(), "127.0.0.0/8");
        assert_eq!(c.default_quota(), Quota::UNLIMITED);
        assert_eq!(c.audit_retention_days, 30);
        assert_eq!(c.api_rates(), crate::api::rate_limit::ApiRates::default());
        let q = DaemonConfig::try_parse_from(["lbd", "--default-quota-instances", "3"]).unwrap();
        assert_eq!(q.default_quota().max_instances, Limit::AtMost(3));
        assert!(DaemonConfig::try_parse_from(["lbd", "--default-quota-nodes", "-2"]).is_err());
        let netns = DaemonConfig::try_parse_from(["lbd", "--network", "netns"]).unwrap();
        assert_eq!(netns.subnet_pool(), ("100.64.0.0/10".parse().unwrap(), 24));
        assert_eq!(c.failover_grace, 60);
        assert_eq!(c.redis_url, None);
        let r = DaemonConfig::try_parse_from(["lbd", "--redis-url", "redis://127.0.0.1:6379/0"]);
        assert_eq!(
            r.unwrap().redis_url.as_deref(),
            Some("redis://127.0.0.1:6379/0")
        );
        for bad in ["127.0.0.1:6379", "http://x", "redis://", "redis:///0"] {
            assert!(
                DaemonConfig::try_parse_from(["lbd", "--redis-url", bad]).is_err(),
                "{bad}"
            );
        }
        assert_eq!(c.failover_max_share, 0.5);
        assert_eq!(c.dns_ttl, 5);
        assert_eq!(c.resolver, None);
        let r = DaemonConfig::try_parse_from(["lbd", "--resolver", "127.0.0.1:5300"]).unwrap();
        assert_eq!(r.resolver, Some("127.0.0.1:5300".parse().unwrap()));
        assert!(DaemonConfig::try_parse_from(["lbd", "--resolver", "127.0.0.1"]).is_err());
        assert!(DaemonConfig::try_parse_from(["lbd", "--failover-max-share", "1.5"]).is_err());
        assert!(DaemonConfig::try_parse_from(["lbd", "--retention-interval", "0"]).is_err());
        assert_eq!(c.vm_domain_type, VmDomainType::Auto);
        assert_eq!(c.vm_secret_dir, PathBuf::from("/run/lbaas/vm-secrets"));
        assert_eq!(c.api_header_timeout_ms, 10_000);
        assert_eq!(c.api_max_connections, 256);
        assert_eq!(c.node_user, "nobody");
        assert!(DaemonConfig::try_parse_from(["lbd", "--api-max-connections", "0"]).is_err());
        assert!(c.allow_backend_cidr.is_empty());
    }

    #[test]
    fn allowed_backend_cidrs_repeat() {
        let c = DaemonConfig::try_parse_from([
            "lbd",
            "--allow-backend-cidr",
            "169.254.0.0/16",
            "--allow-backend-cidr",
            "fe80::/10",
        ])
        .unwrap();
        let want: Vec<IpNet> = vec![
            "169.254.0.0/16".parse().unwrap(),
            "fe80::/10".parse().unwrap(),
        ];
        assert_eq!(c.allow_backend_cidr, want);
        for bad in ["169.254.0.1", "10.0.0.0/33", "example.com/8"] {
            assert!(
                DaemonConfig::try_parse_from(["lbd", "--allow-backend-cidr", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn vm_domain_types() {
        for (arg, want) in [
            ("auto", VmDomainType::Auto),
            ("kvm", VmDomainType::Kvm),
            ("qemu", VmDomainType::Qemu),
        ] {
            let c = DaemonConfig::try_parse_from(["lbd", "--vm-domain-type", arg]).unwrap();
            assert_eq!(c.vm_domain_type, want);
        }
        let err = DaemonConfig::try_parse_from(["lbd", "--vm-domain-type", "xen"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid value 'xen'"), "{err}");
        assert!(err.contains("[possible values: auto, kvm, qemu]"), "{err}");
    }

    #[test]
    fn zones() {
        validate_zone("lbaas.internal").unwrap();
        validate_zone("lbaas.internal.").unwrap();
        assert!(validate_zone("Bad_Zone").is_err());
        assert!(validate_zone("").is_err());
        assert!(validate_zone("a..b").is_err());
    }
}
